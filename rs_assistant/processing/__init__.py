"""The "RS Assistant" Processing provider and its algorithms, and the GDAL logic they share.

``provider.RSAssistantProvider`` lists the algorithms; ``mask_export`` is usable without any
user interface (scripts, the export dialog, tests). The "Large areas" algorithms (tiled jobs on
the engine) share ``batch_algorithm``, find their engine through ``engine_connection`` and resume
through ``rs_assistant.core.journal``.
"""
