def test_placeholder() -> None:
    import dealsd.payloads  # noqa: F401
