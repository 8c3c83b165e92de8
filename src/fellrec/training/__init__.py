"""Lightning layer: client and federated modules, data module and the FederatedLoop callback."""
