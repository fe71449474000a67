# A package only so that wheels ship the revision files; Alembic skips __init__.py.
