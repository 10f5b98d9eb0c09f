"""retnet.benchmarks"""
