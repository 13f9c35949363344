"""Running what `bot.pipelines` declares: pipeline runs on Celery canvas (their record, stage
hooks and audit), schedule slots fired by celery beat, and triggers that start work when a
report arrives. `submit.py` is the one way anything here (and `bot.client`) enqueues work.
"""
