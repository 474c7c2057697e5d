"""Side-by-side benchmarks of the article's code and the harness; never part of the tests."""
