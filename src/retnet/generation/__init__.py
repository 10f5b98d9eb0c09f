"""retnet.generation"""
