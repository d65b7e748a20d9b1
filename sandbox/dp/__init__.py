"""Differential privacy: planning (sensitivity, epsilon split), OpenDP noise, accuracy."""
