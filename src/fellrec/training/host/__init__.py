"""The LightningModules that host clients, and what they are built from and talk to."""
