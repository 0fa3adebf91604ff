"""Where bytes come from: the transfer interface every source implements, and the sources (HTTP with its
hosts' gates and the Zenodo records API, Google Cloud Storage, a local folder)."""
