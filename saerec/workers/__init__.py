"""Ray execution code (actors, train loops, Tune trials) that the stages call; models and storage know nothing of Ray."""
