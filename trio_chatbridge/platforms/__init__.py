"""The platform connectors, one subpackage each: ``weixin``, ``wecom``, ``lark``."""

__all__: list[str] = []
