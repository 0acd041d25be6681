"""PyWorkflow."""
