"""`ae`: the analyst's command line for the Attribution Engine, over its REST API."""
