"""Formatters: each turns an Event into one line of output (without the newline)."""
