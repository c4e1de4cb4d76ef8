"""The stitching lab: grids of routes x adapter kinds x lrs x seeds, trained with frozen anchors in one pass."""
