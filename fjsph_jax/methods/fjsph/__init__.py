"""FJSPH: FLIP-style towers, hash heads, joint label similarity, a discrete code bank."""
