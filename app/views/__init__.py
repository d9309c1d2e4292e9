"""The pages of the app: Solve, Train, History, Compare, System."""
