"""SAERec on Ray: sparse-autoencoder intent priors from text for sequential recommendation."""
