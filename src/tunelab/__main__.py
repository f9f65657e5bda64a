from tunelab.cli import main

if __name__ == "__main__":  # a spawned process (sweep workers) imports this module too
    main()
