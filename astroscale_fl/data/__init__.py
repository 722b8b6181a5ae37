"""From a catalog to each node's rows: sources, tasks, the test split and partitions, tables, node data."""
