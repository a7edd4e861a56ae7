using System.Diagnostics;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Runs test/Microsoft.ML.Lora.LoadCheck (a console app that only calls <c>mlContext.Model.Load</c>, with no
/// registration call) in a fresh process, using the test host's own <c>dotnet</c>, runtime config and dependencies.
/// </summary>
internal static class LoadCheckRunner
{
    public static (int ExitCode, string Output) Run(params string[] arguments)
    {
        using var process = Start(arguments);
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail("LoadCheck did not finish within 3 minutes.");
        }

        return (process.ExitCode, stdout + stderr.Result);
    }

    /// <summary>Starts LoadCheck with standard output and error redirected; the caller reads them and waits.</summary>
    public static Process Start(params string[] arguments)
    {
        string baseDirectory = AppContext.BaseDirectory;
        string tool = Path.Combine(baseDirectory, "Microsoft.ML.Lora.LoadCheck.dll");
        string runtimeConfig = Path.Combine(baseDirectory, "Microsoft.ML.Lora.Tests.runtimeconfig.json");
        string deps = Path.Combine(baseDirectory, "Microsoft.ML.Lora.Tests.deps.json");
        Assert.IsTrue(File.Exists(tool), tool);
        var start = new ProcessStartInfo(DotnetPath())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = baseDirectory,
        };
        foreach (var argument in new[] { "exec", "--runtimeconfig", runtimeConfig, "--depsfile", deps, tool }.Concat(arguments))
        {
            start.ArgumentList.Add(argument);
        }

        return Process.Start(start)!;
    }

    private static string DotnetPath()
    {
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(host) && File.Exists(host))
        {
            return host;
        }

        string? self = Environment.ProcessPath;
        if (self is not null && Path.GetFileNameWithoutExtension(self).Equals("dotnet", StringComparison.OrdinalIgnoreCase))
        {
            return self;
        }

        return "dotnet";
    }
}
