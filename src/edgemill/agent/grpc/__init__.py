"""One thin translator per protocol over the data plane, and the server that hosts them."""
