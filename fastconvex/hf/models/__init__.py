"""Speech models as fastconvex sees them: the block layout of each family,
the cut and pruning, saving and checked loading of model folders, the
classification heads, and running a classifier from a layer on."""
