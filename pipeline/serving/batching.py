"""Micro-batching of recommendation requests on the API's event loop.

Scoring one reader is memory-bound: the GMF half reads the whole (gmf_dim x n_items) item matrix,
36 MB on the full catalog, to produce one row of scores. Batches are scored on the batcher's own
thread, so the event loop keeps reading requests meanwhile: those that arrive while a batch is being
scored wait in `pending` and are scored together as the next batch, so the matrix is read once for
all of them. Nothing waits on a timer: a lone request is scored at once, and batches form only when
requests queue up anyway, under concurrency. (Scored on the loop itself, a batch blocked the reading
of the next requests, and batches at 8 concurrent clients held 1.6 requests on average.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from pipeline.ranking import ListRules
from pipeline.serving.service import BookRecommender, Reader, reads_and_likes

if TYPE_CHECKING:
    from pipeline.storage.feedback import FeedbackStore


@dataclass
class RankRequest:
    recommender: BookRecommender
    user_id: str
    k: int
    reader: Reader | None = None  # for readers the model does not know: age, location, liked books
    extra_reads: tuple[str, ...] = ()
    extra_excluded: tuple[str, ...] = ()
    rules: ListRules | None = None  # None: the model's list rules
    blocked: tuple[str, ...] = ()  # never listed (request exclude list, unavailable books)
    exclude: str = "all"  # "train": the evaluation protocol's history and exclusions (replays)
    feedback: FeedbackStore | None = None  # fold in what the reader told this store (live feedback)
    future: asyncio.Future | None = field(default=None, repr=False)  # set by `RankBatcher.rank`


def with_live_feedback(requests: list[RankRequest]) -> list[RankRequest]:
    """The requests with their readers' stored feedback folded in: every book they rated excluded, the
    ones that count as positives read. One query per store for the whole batch, on the scoring thread."""
    stores = {id(r.feedback): r.feedback for r in requests if r.feedback is not None}
    latest = {key: store.latest_ratings_of([r.user_id for r in requests]) for key, store in stores.items()}
    answer = []
    for request in requests:
        if request.feedback is None:
            answer.append(request)
            continue
        ratings = latest[id(request.feedback)].get(request.user_id.strip(), {})
        read, liked = reads_and_likes(ratings, request.recommender.min_explicit_rating)
        answer.append(
            replace(
                request,
                extra_reads=(*request.extra_reads, *liked),
                extra_excluded=(*request.extra_excluded, *read),
                feedback=None,
            )
        )
    return answer


def rank_together(requests: list[RankRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One `rank` call for requests that share a recommender and an exclusion mode; each answer cut to
    its own k.

    New readers get distinct ids inside the batch, so that two of them never share a description.
    """
    recommender = requests[0].recommender
    ids = [
        f"<new reader {n}>" if request.reader is not None else request.user_id
        for n, request in enumerate(requests)
    ]
    ranked, scores = recommender.rank(
        ids,
        max(request.k for request in requests),
        requests[0].exclude,
        readers={i: r.reader for i, r in zip(ids, requests, strict=True) if r.reader is not None},
        extra_reads={i: r.extra_reads for i, r in zip(ids, requests, strict=True)},
        extra_excluded={i: r.extra_excluded for i, r in zip(ids, requests, strict=True)},
        rules=[r.rules or recommender.ranker.rules for r in requests],
        blocked={i: r.blocked for i, r in zip(ids, requests, strict=True)},
    )
    return [(ranked[row, : r.k], scores[row, : r.k]) for row, r in enumerate(requests)]


class Overloaded(RuntimeError):
    """More requests wait to be scored than the batcher holds: answer 503 rather than queue without bound."""


class RankBatcher:
    def __init__(
        self,
        max_batch: int = 32,
        observe_batch_size: Callable[[int], None] | None = None,
        max_pending: int = 256,
    ):
        self.max_batch, self.max_pending = max_batch, max_pending
        self.observe_batch_size = observe_batch_size or (lambda size: None)
        self.pending: list[RankRequest] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        # One thread: batches are scored one after the other, each with every core torch is given.
        self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rank-batch")

    async def rank(
        self,
        recommender: BookRecommender,
        user_id: str,
        k: int,
        reader: Reader | None = None,
        extra_reads: Iterable[str] = (),
        extra_excluded: Iterable[str] = (),
        rules: ListRules | None = None,
        blocked: Iterable[str] = (),
        exclude: str = "all",
        feedback: FeedbackStore | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pending) >= self.max_pending:
            raise Overloaded(f"{len(self.pending)} requests are waiting to be scored; retry in a moment")
        loop = asyncio.get_running_loop()
        request = RankRequest(
            recommender,
            user_id,
            recommender.validate_k(k),
            reader,
            tuple(extra_reads),
            tuple(extra_excluded),
            rules,
            tuple(blocked),
            exclude,
            feedback,
            loop.create_future(),
        )
        self.pending.append(request)
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._run())
        self._wake.set()
        return await request.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            # One turn of the loop: handlers whose requests are already read enqueue theirs first.
            await asyncio.sleep(0)
            while self.pending:
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                outcomes = await loop.run_in_executor(self._scorer, self._score, batch)
                for request, ok, value in outcomes:  # futures are settled on the loop's own thread
                    if not request.future.done():
                        request.future.set_result(value) if ok else request.future.set_exception(value)

    def _score(self, batch: list[RankRequest]) -> list[tuple[RankRequest, bool, object]]:
        """(request, succeeded, answer or error) for every request of `batch`."""
        self.observe_batch_size(len(batch))
        try:
            ready = with_live_feedback(batch)
        except Exception as err:  # the store is down: no list may ignore what readers told it
            return [(request, False, err) for request in batch]
        groups: dict[tuple[int, str], list[tuple[RankRequest, RankRequest]]] = {}
        for request, prepared in zip(batch, ready, strict=True):
            # a model swap (or an A/B test) may put two recommenders in one batch
            groups.setdefault((id(request.recommender), request.exclude), []).append((request, prepared))
        outcomes = []
        for group in groups.values():
            try:
                answers = rank_together([prepared for _, prepared in group])
                outcomes += [(r, True, answer) for (r, _), answer in zip(group, answers, strict=True)]
            except Exception:
                # One bad request must not fail the others: score them one by one.
                outcomes += [self._alone(request, prepared) for request, prepared in group]
        return outcomes

    @staticmethod
    def _alone(request: RankRequest, prepared: RankRequest) -> tuple[RankRequest, bool, object]:
        try:
            return request, True, rank_together([prepared])[0]
        except Exception as err:
            return request, False, err

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._scorer.shutdown(wait=False, cancel_futures=True)
