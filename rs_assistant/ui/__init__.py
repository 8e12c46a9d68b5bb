"""Qt/QGIS glue: the dock, map tools, layer picker and dialogs. Imports Qt only via qgis.PyQt."""
