"""The graph measure: the kNN graph, shortest paths between same-class
points, and the scores of one layer or many (``knn_graph``,
``graph_convexity``, ``layer_scores``); the scoring plan they share."""
