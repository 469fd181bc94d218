"""Running trained policies: serving, the online learner behind the server, the simulated robot."""
