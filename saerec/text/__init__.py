"""Text encoders and the word vocabulary; pure library code, no Ray and no storage. Import the
submodules (``saerec.text.encoders`` imports torch; the job checks its config and models without it)."""
