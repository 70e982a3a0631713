"""A deployment's life: deploy (provision -> facts -> install -> model -> serve), status and logs, teardown; the
services it runs on its host; and what notebooks use to find one and clean up after themselves."""
