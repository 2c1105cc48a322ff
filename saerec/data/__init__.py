"""Loaders for raw inputs (Amazon review files, sequences + items TSV, the demo generator) and splits."""
