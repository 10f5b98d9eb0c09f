"""retnet.training"""
