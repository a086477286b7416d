"""The platform connectors, one subpackage each: ``weixin``, ``wecom``, ``lark``."""
