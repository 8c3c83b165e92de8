"""The FederatedLoop callback: Lightning's hooks mapped onto the round engine, and its display."""
