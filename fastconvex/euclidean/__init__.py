"""The Euclidean measure: points on the segments between same-class points,
sent through the rest of the network, counted when they keep the class
(``euclidean_convexity``, ``layer_euclidean_scores``)."""
