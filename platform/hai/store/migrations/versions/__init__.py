"""hai's state store revisions, oldest first; each is frozen once released."""
