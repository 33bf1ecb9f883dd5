"""bookrec: a real-time book recommender on Book-Crossing."""
