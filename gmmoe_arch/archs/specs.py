"""Option entries that name a registered class: ``Name`` or ``{type: Name, **options}`` (experts, gates)."""


def resolve(registry, spec, option, what, malformed):
    """``(class, options)`` of ``spec`` in ``registry``.

    ``option`` (e.g. ``'network_g.gate'``) and ``what`` (``'gate'``) name the entry in the errors; ``malformed``
    is the whole message for a spec that is neither a name nor a dict with a string ``type``.

    Raises:
        ValueError: ``malformed``.
        KeyError: ``spec`` names nothing registered (the message lists what is).
    """
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get('type'), str):
        options = dict(spec)
        name = options.pop('type')
    else:
        raise ValueError(malformed)
    if name not in registry:
        known = ', '.join(sorted(n for n, _ in registry))
        raise KeyError(f'{option}: unknown {what} "{name}"; registered: {known}')
    return registry.get(name), options
