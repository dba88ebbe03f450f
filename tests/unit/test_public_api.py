"""The public names are a contract: this test fails when they drift."""

import dromos

EXPECTED = [
    "App",
    "Batch",
    "Broker",
    "BrokerError",
    "Call",
    "Chain",
    "ChainHandle",
    "ConfigurationError",
    "DromosError",
    "Event",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "JobStatus",
    "ResultTimeout",
    "Retry",
    "Subscriber",
    "Task",
    "UnknownTaskError",
    "ValidationError",
    "WebhookAttempt",
    "Worker",
    "__version__",
    "current_job",
]


def test_public_names_have_not_drifted() -> None:
    assert dromos.__all__ == EXPECTED


def test_all_is_sorted_and_importable() -> None:
    assert dromos.__all__ == sorted(dromos.__all__)
    for name in dromos.__all__:
        assert getattr(dromos, name) is not None


def test_job_states_are_the_documented_strings() -> None:
    assert [s.value for s in dromos.JobState] == [
        "scheduled",
        "queued",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "cancelled",
    ]


def test_every_dromos_error_shares_one_base() -> None:
    errors = ["BrokerError", "ConfigurationError", "JobFailed", "JobCancelled", "JobNotFound"]
    errors += ["ResultTimeout", "UnknownTaskError", "ValidationError"]
    for name in errors:
        assert issubclass(getattr(dromos, name), dromos.DromosError)
    assert not issubclass(dromos.Retry, dromos.DromosError)
