"""retnet.serving"""
