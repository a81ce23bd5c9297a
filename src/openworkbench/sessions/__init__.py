"""IDE sessions: the service the API calls, the runner and watch that drive their lives, and their files."""
