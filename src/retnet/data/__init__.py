"""retnet.data"""
