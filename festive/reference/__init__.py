"""Debian's own shared objects of the reference families: fetched, lifted, labelled."""
