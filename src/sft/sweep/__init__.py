"""`sft sweep`: Optuna searches a recipe's settings, each trial a normal run (study.py); the search space file
(space.py); the trials table, the best recipe and the sweep's page (page.py)."""
