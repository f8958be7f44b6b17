"""The review application (`xrq serve`): radiologists correct and sign drafts; reader studies.

Starlette + Jinja2 (autoescaping always on), run by uvicorn. Calls worker/ services and db/ queries;
never imports cli/ or celery.
"""
