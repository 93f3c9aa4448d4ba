"""seamfree in napari: diagnose a model on a layer, see its seams, fix it, predict seamlessly into a lazy layer.

The plugin is a thin layer over the public functions (``diagnose``, ``predict``, ``segment``, ``convert_norm``,
``recalibrate_on_images``), declared to napari by the npe2 manifest ``napari.yaml`` beside this file. Install it
with ``pip install 'seamfree[napari]'``; napari then lists three dock widgets under Plugins → seamfree, a reader
for seamfree's OME-Zarr outputs and two sample images.

Only :mod:`seamfree.napari.widgets` imports Qt and napari; :mod:`seamfree.napari.layers` (what the widgets add
to the viewer, as napari layer-data tuples), the reader and the sample data need neither, so they are tested
without a display.
"""
