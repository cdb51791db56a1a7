"""Sockets, frames and messages: everything that moves data between stages, and nothing that runs a model."""
