"""Variants for `redis_replay.py replay --variants`: the batch script cut short at successive points, so that the
differences in instructions per event say what each part costs Redis (BENCHMARKS.md, "Redis's share").
Each asserts the text it cuts at, so a changed script fails loudly instead of measuring something else."""


def _batch(source, cut):
    if not source.startswith("local counts = {}"):
        return source  # the single-event scripts: not called by the batching processor
    return cut(source)


def _replace(source, old, new):
    assert old in source, old
    return source.replace(old, new, 1)


def request_only(source):
    """The call and its arguments reach the script, which returns at once."""
    return _batch(source, lambda s: "return {}")


def calls_split(source):
    """Plus the per-call tables (keys, arguments), the results and the counting; no event function runs."""
    return _batch(source, lambda s: _replace(s, "local ok, result = pcall(fn, keys, args)",
                                             "local ok, result = true, {'applied'}"))


def functions_return(source):
    """Plus calling the event functions, which return at once."""
    def cut(s):
        for name in ("job_event", "entity_event", "sequence_event"):
            s = _replace(s, f"local function {name}(KEYS, ARGV)",
                         f"local function {name}(KEYS, ARGV) if true then return {{'applied', '', '', ''}} end ")
        return s
    return _batch(source, cut)


def job_setup(source):
    """Plus the job script's set-up (locals, helper closures) before it reads the job, and the sequence calls in
    full; the job events are not applied."""
    return _batch(source, lambda s: _replace(s, "local stored = redis.call('HMGET', job,",
                                             "if true then return {'applied', '', '', ''} end\n"
                                             "local stored = redis.call('HMGET', job,"))
