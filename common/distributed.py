"""CONTRACT STUB (to be implemented): torchrun helpers.

init() -> (rank, world_size) from env (gloo on CPU, nccl on CUDA), no-op single process.
assign_clients(clients, sizes, world_size) -> list[list[int]] balanced by size, largest first.
all_reduce_sum_(tensors) one flat all-reduce; reduce_aggregator_(agg) all-reduces agg.accumulators().
is_main(); barrier(); broadcast_object(obj)
"""
