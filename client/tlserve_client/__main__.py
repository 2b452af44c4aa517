from tlserve_client.cli import main

main()
