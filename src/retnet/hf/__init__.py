"""retnet.hf"""
