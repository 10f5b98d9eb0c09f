"""retnet.models"""
