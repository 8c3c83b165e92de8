"""The data side of training: the data module and which examples each client trains on."""
